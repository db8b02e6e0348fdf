"""Benchmark of the RTRL core: forward + backward of one segment, per gradient mode.

    .venv/bin/python benchmarks/bench_core.py                # paper sizes (B=32, D=257)
    .venv/bin/python benchmarks/bench_core.py --quick        # small smoke run
    THP_MEM_ALLOC_ENABLE=1 .venv/bin/python benchmarks/bench_core.py --threads 1 --json core.json

``--threads`` fixes ``torch.set_num_threads`` (default 1: stable on a shared machine).
``THP_MEM_ALLOC_ENABLE=1`` (a PyTorch environment variable) backs large CPU tensors with transparent
huge pages: the fresh [B, K*N, D] sensitivity tensor of every segment then costs far fewer page
faults (measured: 16 MB first-touch write 7.0 ms → 3.5 ms; glibc MALLOC_* settings did not help).

Prints, for each (N, T), the median wall time of forward + backward of one segment (loss on every
output) for "rtrl", "rtrl_stepwise" and "tbptt", called as users call the core
(``out, state = core(x, state, gradient=mode)``), and for TorchRL's ``LSTMModule`` (torch's
``nn.LSTM``, what users would pick instead) trained by TBPTT at the same N and T; all measured
interleaved in one process (the machines are noisy, so the ratios matter). Memory: bytes autograd
keeps for backward and bytes of the carried state (with CUDA: peak allocated memory as well).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import rtrl_modules as rm
from rtrl_modules.core.gradcheck import saved_tensor_bytes

MODES = ("rtrl", "rtrl_stepwise", "tbptt", "lstm")


def state_bytes(state) -> int:
    return sum(t.numel() * t.element_size() for t in state.values(include_nested=True, leaves_only=True))


def _lstm_segment(batch, hidden, inputs, steps, device, x, weights):
    """TorchRL's LSTMModule in recurrent mode over the same [B, T, D] segment, from a carried state."""
    from tensordict import TensorDict
    from torchrl.modules import LSTMModule

    lstm = LSTMModule(
        input_size=inputs, hidden_size=hidden, in_key="x", out_key="out", default_recurrent_mode=True
    ).to(device)
    state = torch.randn(batch, steps, 1, hidden, device=device) * 0.1
    data = TensorDict(
        {
            "is_init": torch.zeros(batch, steps, 1, dtype=torch.bool, device=device),
            "recurrent_state_h": state,
            "recurrent_state_c": state.clone(),
        },
        batch_size=[batch, steps],
    )
    return lstm, data


def bench(
    batch: int, hidden: int, inputs: int, steps: int, reps: int, device: str, modes=MODES
) -> dict[str, dict]:
    torch.manual_seed(0)
    core = rm.ELSTM(inputs, hidden).to(device)
    x = torch.randn(batch, steps, inputs, device=device, requires_grad=True)
    weights = torch.randn(batch, steps, hidden, device=device)
    state = core.initial_state(batch, device=device)
    _, state = core(x.detach(), state)  # non-zero carried sensitivities
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    lstm, lstm_data = _lstm_segment(batch, hidden, inputs, steps, device, x, weights)

    def segment(mode):
        if mode == "lstm":
            out = lstm(lstm_data.clone(False).set("x", x))["out"]
            (out * weights).sum().backward()
            return None
        out, new_state = core(x, state, gradient=mode)
        (out * weights).sum().backward()
        return new_state

    times = {m: [] for m in modes}
    for _ in range(2):  # warm-up
        for mode in modes:
            segment(mode)
    for _ in range(reps):
        for mode in modes:  # interleaved, so drift in machine load hits every mode alike
            core.zero_grad(set_to_none=True)
            lstm.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            segment(mode)
            sync()
            times[mode].append(time.perf_counter() - start)
    results = {"lstm": {"time": statistics.median(times["lstm"])}} if "lstm" in modes else {}
    for mode in (m for m in modes if m != "lstm"):
        core.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        kept = saved_tensor_bytes(lambda mode=mode: (core(x, state, gradient=mode)[0] * weights).sum())
        new_state = segment(mode)
        results[mode] = {
            "time": statistics.median(times[mode]),
            "saved": kept,
            "state": state_bytes(new_state),
            "peak": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=257)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 50])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 3 repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        args.hidden, args.steps, args.reps, args.batch = [32], [5, 20], 3, 4

    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', '0')}"
    )
    print(f"# B={args.batch}, D={args.inputs}, median of {args.reps} interleaved repetitions\n")
    print(
        "| N | T | tbptt ms | rtrl ms | stepwise ms | lstm ms | rtrl / tbptt | rtrl / lstm | stepwise / rtrl "
        "| kept for backward MB (rtrl / tbptt) | carried sensitivities MB (rtrl) | B·(2ND+4N) floats MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    mb, nan = 1 / 2**20, float("nan")
    for hidden in args.hidden:
        for steps in args.steps:
            r = bench(args.batch, hidden, args.inputs, steps, args.reps, args.device, args.modes)
            ms = {m: r[m]["time"] * 1e3 if m in r else nan for m in MODES}
            saved = {m: r[m]["saved"] * mb if "saved" in r.get(m, {}) else nan for m in ("rtrl", "tbptt")}
            sens = r["rtrl"]["state"] - r["tbptt"]["state"] if "rtrl" in r and "tbptt" in r else nan
            formula = args.batch * (2 * hidden * args.inputs + 4 * hidden) * 4
            rows.append(
                {
                    "N": hidden,
                    "T": steps,
                    "ms": ms,
                    "sens_bytes": sens,
                    "formula_bytes": formula,
                    "saved": {m: r[m]["saved"] for m in r if "saved" in r[m]},
                }
            )
            print(
                f"| {hidden} | {steps} | {ms['tbptt']:.1f} | {ms['rtrl']:.1f} | {ms['rtrl_stepwise']:.1f} "
                f"| {ms['lstm']:.1f} | {ms['rtrl'] / ms['tbptt']:.2f} | {ms['rtrl'] / ms['lstm']:.2f} "
                f"| {ms['rtrl_stepwise'] / ms['rtrl']:.2f} | {saved['rtrl']:.1f} / {saved['tbptt']:.1f} "
                f"| {sens * mb:.3f} | {formula * mb:.3f} |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
